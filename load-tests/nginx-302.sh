# Sourced by the load scripts: nginx answering a fixed 302 on every path, the reference they
# measure linkpulse against.
#
#   start_nginx_302 DIR PORT [CERT KEY]   # config, pid file and logs in DIR; stop: kill "$(cat DIR/nginx.pid)"
#
# With CERT and KEY (PEM files) it serves HTTPS instead: TLS 1.2 and 1.3, no session cache or
# tickets (so every new connection is a full handshake), a million requests per connection.
start_nginx_302() {
    local dir=$1 port=$2 tls="" listen="listen 127.0.0.1:$2;"
    if [ -n "${3:-}" ]; then
        listen="listen 127.0.0.1:$port ssl; keepalive_requests 1000000;"
        tls="ssl_certificate $3; ssl_certificate_key $4; ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off; ssl_session_tickets off;"
    fi
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
        $listen
        $tls
        location / { return 302 https://example.com/target; }
    }
}
NGINX
    nginx -c "$dir/nginx.conf" -p "$dir"
}
