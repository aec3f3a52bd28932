# JupyterHub for a labxds class on one machine (docs/workshop.md, "A class on JupyterHub").
#
#   .venv/bin/jupyterhub -f deploy/jupyterhub/jupyterhub_config.py      (from the repository root)
#
# Learners log in with their name and the class password; each gets a single-user server whose
# kernel runs their own Envoy and echo services, on ports of their own, configured by the
# instructor's workshop. The workshop runs as the hub service "workshop": its control plane, its
# desk and its dashboard (https://HUB/services/workshop/, instructors only). Everything listens
# on 127.0.0.1 unless LABXDS_HUB_URL says otherwise; only the hub's proxy faces the learners.
#
# Settings (environment):
#   LABXDS_HUB_URL          where the hub's proxy listens (default http://127.0.0.1:8000). For a
#                           class on a network: https://0.0.0.0:443 with LABXDS_HUB_SSL_CERT/KEY,
#                           or keep loopback behind a TLS-terminating reverse proxy.
#   LABXDS_HUB_DATA         state: hub database, secrets, the workshop's SQLite store (default hub-data/)
#   LABXDS_ROSTER           a file with one learner name per line (default: $LABXDS_HUB_DATA/roster.txt)
#   LABXDS_INSTRUCTORS      hub admins who see the dashboard (default: instructor)
#   LABXDS_CLASS_PASSWORD   the learners' password (made and kept in $LABXDS_HUB_DATA if unset)
#   LABXDS_INSTRUCTOR_PASSWORD  the instructors' password, 32+ characters (made and kept if unset)
#   LABXDS_XDS_PORT, LABXDS_WORKSHOP_PORT   the workshop's control plane and web ports (18000, 18080)
#   LABXDS_PORT_BASE        learners' ports: BASE+4*id .. +3 (Envoy admin, listener, service1, service2; 20000)
#   LABXDS_HUB_API_PORT, LABXDS_PROXY_API_PORT   the hub's and the proxy's own APIs (8081, 8001)
#   LABXDS_COURSE           notebooks copied into a learner's home on first start (default notebooks/)

import os
import secrets
import shutil
import sys
from pathlib import Path

from labxds.classroom.spawn import PortBlock, make_pre_spawn_hook

c = get_config()  # noqa: F821 (JupyterHub's config loader defines it)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
env = os.environ.get
DATA = Path(env("LABXDS_HUB_DATA", "hub-data")).resolve()
DATA.mkdir(parents=True, exist_ok=True, mode=0o700)
DATA.chmod(0o700)  # secrets, the hub's database, the workshop's tokens


def kept_secret(name: str, given: str | None, nbytes: int = 24) -> str:
    """A secret from the environment, else the one made on the first start (0600 in DATA)."""
    if given:
        return given
    path = DATA / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(nbytes) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


# -- the hub, its proxy and its database: loopback unless told ---------------------------------
c.JupyterHub.bind_url = env("LABXDS_HUB_URL", "http://127.0.0.1:8000")
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{env('LABXDS_HUB_API_PORT', '8081')}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{env('LABXDS_PROXY_API_PORT', '8001')}"
c.ConfigurableHTTPProxy.auth_token = kept_secret("proxy-token", env("CONFIGPROXY_AUTH_TOKEN"))
chp = Path(sys.prefix) / "bin" / "configurable-http-proxy"  # make venv installs it there
if chp.exists():
    c.ConfigurableHTTPProxy.command = [str(chp)]
if env("LABXDS_HUB_SSL_CERT"):
    c.JupyterHub.ssl_cert = env("LABXDS_HUB_SSL_CERT")
    c.JupyterHub.ssl_key = env("LABXDS_HUB_SSL_KEY")
c.JupyterHub.db_url = f"sqlite:///{DATA / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(DATA / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(DATA / "jupyterhub.pid")

# -- who may log in: the roster, with the class password ----------------------------------------
roster_file = Path(env("LABXDS_ROSTER", str(DATA / "roster.txt")))
roster = sorted({line.strip() for line in roster_file.read_text().splitlines()
                 if line.strip() and not line.startswith("#")}) if roster_file.exists() else []  # fmt: skip
instructors = sorted({n.strip() for n in env("LABXDS_INSTRUCTORS", "instructor").split(",") if n.strip()})
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = kept_secret("class-password", env("LABXDS_CLASS_PASSWORD"), 9)
c.SharedPasswordAuthenticator.admin_password = kept_secret(
    "instructor-password", env("LABXDS_INSTRUCTOR_PASSWORD"), 32)
c.Authenticator.allowed_users = set(roster)
c.Authenticator.admin_users = set(instructors)

# -- the instructor's workshop, a service of the hub --------------------------------------------
XDS_PORT = int(env("LABXDS_XDS_PORT", "18000"))
WORKSHOP_PORT = int(env("LABXDS_WORKSHOP_PORT", "18080"))
service_token = kept_secret("workshop-service-token", env("LABXDS_WORKSHOP_SERVICE_TOKEN"), 32)
workshop_url = f"http://127.0.0.1:{WORKSHOP_PORT}"
c.JupyterHub.services = [{
    "name": "workshop",
    "url": workshop_url,
    "api_token": service_token,
    "oauth_no_confirm": True,
    "command": [sys.executable, "-m", "labxds", "classroom",
                "--store", str(DATA / "workshop.sqlite"),
                "--xds-port", str(XDS_PORT),
                "--learners", ",".join(roster),
                "--instructors", ",".join(instructors)],
    # learners' kernels reach the desk and the control plane on this machine's loopback
    "environment": {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "LANG", "TMPDIR")},
}]
c.JupyterHub.load_roles = [{
    "name": "instructors",
    "users": instructors,
    "scopes": ["access:services!service=workshop"],
}]

# -- learners' servers: same machine, same Unix user (see docs/workshop.md for isolation) ---------
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = str(DATA / "home" / "{username}")
c.Spawner.ip = "127.0.0.1"
c.Spawner.cmd = [str(Path(sys.prefix) / "bin" / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab/tree/workshop_learner.ipynb"
if os.geteuid() == 0:
    c.Spawner.args = ["--allow-root"]
c.Spawner.http_timeout = 60
c.Spawner.start_timeout = 120
# The single-user config that puts Envoy's admin and listener behind the hub's proxy.
singleuser_config = str(HERE / "singleuser")
course = Path(env("LABXDS_COURSE", str(REPO / "notebooks")))


def copy_course(spawner) -> None:
    """The course notebooks in the learner's home, the first time only (their edits stay)."""
    home = Path(spawner.home_dir)
    home.mkdir(parents=True, exist_ok=True)
    for notebook in sorted(course.glob("*.ipynb")):
        if not (home / notebook.name).exists():
            shutil.copy2(notebook, home / notebook.name)


c.Spawner.pre_spawn_hook = make_pre_spawn_hook(
    f"{workshop_url}/services/workshop", service_token,
    ports=PortBlock(int(env("LABXDS_PORT_BASE", "20000"))),
    extra_env={"JUPYTER_CONFIG_PATH": singleuser_config, "LABXDS_LISTEN_HOST": "127.0.0.1"},
    prepare_home=copy_course,
    instructors=instructors,  # their servers are not learners': no Envoy is enrolled for them
)
