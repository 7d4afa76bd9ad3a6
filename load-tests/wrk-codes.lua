-- wrk script: each request goes to a code drawn at random from the file named by
-- the CODES environment variable (one code per line).
local paths = {}

init = function(args)
  local file = assert(io.open(os.getenv("CODES"), "r"))
  for line in file:lines() do
    paths[#paths + 1] = "/" .. line
  end
  file:close()
  math.randomseed(os.time())
end

request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
