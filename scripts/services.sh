#!/usr/bin/env bash
# Start PostgreSQL, Redis and RabbitMQ if they are down (the commands this machine kind uses),
# then wait until each accepts connections. Safe to run when they are already up.
set -u
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! up 5432; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if ! up 6379; then
  echo "services: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
if ! up 5672; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached || true
fi

for port in 5432 6379 5672; do
  for _ in $(seq 1 120); do up "$port" && break; sleep 1; done
  up "$port" || { echo "services: nothing listens on 127.0.0.1:$port" >&2; exit 1; }
done
echo "services: PostgreSQL, Redis and RabbitMQ are up"
