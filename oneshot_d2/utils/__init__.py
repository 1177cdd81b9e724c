"""The bottom layer: file and process utilities every other package uses, importing nothing of
oneshot_d2 but :mod:`oneshot_d2.errors`."""
