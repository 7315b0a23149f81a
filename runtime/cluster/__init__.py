"""The cluster: what the nodes of a dotdo cluster share through etcd."""
