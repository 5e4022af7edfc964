"""The kubelet's plugin registration API (the plugin watcher's side of every plugin socket)."""
