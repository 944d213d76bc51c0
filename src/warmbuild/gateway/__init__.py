"""The gateway: one public endpoint for the scheduler and the builders (docs/architecture.md, "Connection mode 3").

`certs` makes the grant certificates (the runner's key and CSR; the scheduler's signature for one
builder), `names` the server names the gateway answers to, `sync` keeps HAProxy's map of builder
names to pod addresses current (`warmbuild gateway-sync`). The proxy itself is HAProxy, configured
by the chart (deploy/helm/warmbuild/templates/gateway.yaml).
"""
