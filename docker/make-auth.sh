#!/bin/sh
# make-auth.sh [NODE...]: secrets for the auth variant of the compose swarm (compose.auth.yaml).
# Writes, into docker/auth/ (or $SEEDSWARM_AUTH_DIR):
#   passwd          Mosquitto's password file (hashed), one user per node plus `healthcheck`
#   acl             a copy of mosquitto/acl (per-node write ACLs)
#   NODE.env        SEEDSWARM_USERNAME=NODE and SEEDSWARM_PASSWORD for that node only
#   mosquitto.env   the broker healthcheck's user (it may read $SYS only)
# Passwords are random. Nodes default to node1 node2 node3. mosquitto_passwd runs in the broker
# image, so only Docker is needed. Run it again to change every password, then
# `docker compose ... up -d --force-recreate`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dir=${SEEDSWARM_AUTH_DIR:-$here/auth}
image=${MOSQUITTO_IMAGE:-eclipse-mosquitto:2.0.18}
[ $# -gt 0 ] || set -- node1 node2 node3
for n in "$@"; do
	case $n in
	'' | *[!A-Za-z0-9_-]* | healthcheck | mosquitto)
		echo "make-auth.sh: bad node id '$n' (A-Z a-z 0-9 _ -)" >&2
		exit 2
		;;
	esac
done
umask 077
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
secret() { od -An -N18 -tx1 /dev/urandom | tr -d ' \n'; }
rm -f "$dir/passwd" "$dir/acl" # owned by the broker's uid after a previous run
p=$(secret)
printf 'MQTT_USERNAME=healthcheck\nMQTT_PASSWORD=%s\n' "$p" >"$dir/mosquitto.env"
printf 'healthcheck:%s\n' "$p" >"$dir/passwd"
for n in "$@"; do
	p=$(secret)
	printf 'SEEDSWARM_USERNAME=%s\nSEEDSWARM_PASSWORD=%s\n' "$n" "$p" >"$dir/$n.env"
	printf '%s:%s\n' "$n" "$p" >>"$dir/passwd"
done
chmod 600 "$dir"/*.env
cp "$here/mosquitto/acl" "$dir/acl"
# hash the passwords in place; the broker (uid 1883 in eclipse-mosquitto) must own both files
docker run --rm --network none --user 0 --entrypoint sh -v "$dir:/auth" "$image" -c \
	'mosquitto_passwd -U /auth/passwd && chown 1883:1883 /auth/passwd /auth/acl && chmod 0600 /auth/passwd /auth/acl'
echo "make-auth.sh: wrote $dir (passwd, acl, mosquitto.env, $(printf '%s.env ' "$@"| sed 's/ $//'))"
