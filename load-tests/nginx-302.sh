# Sourced by the load scripts: nginx answering a fixed 302 on every path, the reference they
# measure linkpulse against.
#
#   start_nginx_302 DIR PORT    # config, pid file and logs in DIR; stop: kill "$(cat DIR/nginx.pid)"
start_nginx_302() {
    local dir=$1 port=$2
    cat > "$dir/nginx.conf" <<NGINX
worker_processes auto;
daemon on;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir;
    proxy_temp_path $dir;
    fastcgi_temp_path $dir;
    uwsgi_temp_path $dir;
    scgi_temp_path $dir;
    server {
        listen 127.0.0.1:$port;
        location / { return 302 https://example.com/target; }
    }
}
NGINX
    nginx -c "$dir/nginx.conf" -p "$dir"
}
