-- wrk script: every request is a HEAD (linkpulse answers it as a GET, without counting).
wrk.method = "HEAD"
