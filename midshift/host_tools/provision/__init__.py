"""Site provisioning: the site CA, gateway keys and certificates, the ledger's key
registry, the broker's ACL and CRL. ``python -m midshift.host_tools provision --help`` is the
front door; ``docs/provisioning.md`` explains the layout and the default lifetimes."""
