# Student-side nbgrader settings (installed to /opt/venv/etc/jupyter/).
# The hub mounts the exchange and sets these env vars; defaults are the
# project's conventional paths.
import os

c = get_config()  # noqa: F821

c.Exchange.root = os.environ.get("NBGRADER_EXCHANGE", "/srv/nbgrader/exchange")
if os.environ.get("NBGRADER_COURSE_ID"):
    c.CourseDirectory.course_id = os.environ["NBGRADER_COURSE_ID"]
