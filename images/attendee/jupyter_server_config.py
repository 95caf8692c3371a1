# System-wide Jupyter server settings for attendee containers
# (installed to /opt/venv/etc/jupyter/).
c = get_config()  # noqa: F821

# jupyter-resource-usage: show CPU too. Memory/CPU limits come from the
# MEM_LIMIT / CPU_LIMIT env vars that DockerSpawner sets.
c.ResourceUseDisplay.track_cpu_percent = True

# Theano/matplotlib write caches under $HOME; nothing else to tune here.
