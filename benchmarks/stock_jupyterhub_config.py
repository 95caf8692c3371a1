# The "stock" side of bench_saturation.py: the same hub, sign-in and proxy as
# the workshop, but attendee containers from plain DockerSpawner with no
# limits, no parent cgroup, no start-up boost and no admission control.
import os

from dockerspawner import DockerSpawner

from workshop import config

c = get_config()  # noqa: F821
load_subconfig(os.path.join(os.path.dirname(config.__file__), "jupyterhub_config.py"))  # noqa: F821

_cfg = config.load(os.environ["WORKSHOP_CONFIG"])
c.JupyterHub.spawner_class = DockerSpawner
c.DockerSpawner.image = _cfg.image.name
c.DockerSpawner.pull_policy = "never"
c.DockerSpawner.network_name = _cfg.hub.network
c.DockerSpawner.use_internal_ip = False
c.DockerSpawner.remove = True
