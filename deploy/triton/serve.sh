#!/usr/bin/env bash
# Entry of a Triton worker container: register this worker in Consul under its own address (so
# `docker compose up --scale triton-cpu=3` gives three workers), then run tritonserver with the
# arguments given. Registration happens on every start, so a restarted worker with a new address is
# found again; Consul drops the registration of a worker that has not answered its check for a minute.
set -euo pipefail

: "${CONSUL_HTTP_ADDR:?set CONSUL_HTTP_ADDR to the Consul agent, e.g. http://consul:8500}"
template="${TRITON_SERVICE_TEMPLATE:-/etc/infermesh/triton-service.json}"
kind="${TRITON_KIND:-cpu}"

# The container's own address, unless the worker must be reached by another one (another machine).
address="${TRITON_ADVERTISE_ADDRESS:-$(hostname -i)}"
address="${address%% *}"
id="triton-${kind}-$(hostname)"

sed -e "s/@ID@/${id}/g" -e "s/@ADDRESS@/${address}/g" -e "s/@KIND@/${kind}/g" "${template}" |
    curl -fsS --retry 30 --retry-delay 2 --retry-connrefused -X PUT --data-binary @- \
        "${CONSUL_HTTP_ADDR}/v1/agent/service/register"
echo "registered ${id} (${address}) in Consul at ${CONSUL_HTTP_ADDR}"

exec tritonserver "$@"
