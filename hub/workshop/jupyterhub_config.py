# JupyterHub loads this file (`workshop up` passes it with -f). It holds no
# settings of its own: everything comes from workshop.yaml via hubconfig.
import os

import docker

from workshop import config, hubconfig, network, state

c = get_config()  # noqa: F821 - provided by JupyterHub's config loader

_cfg = config.load(os.environ["WORKSHOP_CONFIG"])
_gateway = network.ensure_attendee_network(docker.from_env(), _cfg.hub.network)
hubconfig.apply(c, _cfg, state.state_for(_cfg), _gateway)
