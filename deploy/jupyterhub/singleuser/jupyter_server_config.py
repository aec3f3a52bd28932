# A learner's single-user server: their Envoy's admin and listener behind the hub's proxy.
#
# /user/NAME/envoy-admin/ and /user/NAME/envoy/ (jupyter-server-proxy) reach the ports in
# LABXDS_ADMIN_PORT and LABXDS_LISTENER_PORT on 127.0.0.1, for the logged-in learner only; Envoy
# itself listens on loopback. JupyterHub's spawner points JUPYTER_CONFIG_PATH here (one
# machine); the Kubernetes image copies this file to /etc/jupyter/.

from labxds.classroom.spawn import server_proxy_servers

c = get_config()  # noqa: F821 (Jupyter's config loader defines it)
c.ServerProxy.servers = server_proxy_servers()
