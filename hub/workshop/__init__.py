"""Workshop hub: a JupyterHub teaching server for hands-on deep-learning workshops."""

__version__ = "0.1.0"
