"""`warmbuild scheduler`: an HTTP service in front of the slot Leases, and its client.

The service (app, auth, metrics, service) needs the optional extra `warmbuild[scheduler]`; the
client (client.py) needs only `requests`, so a CI step image stays small. The API is described in
docs/scheduler-openapi.yaml.
"""
