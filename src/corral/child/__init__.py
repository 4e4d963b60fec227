"""Code that runs in corral's children: the launcher, the zygotes, web workers, runners.

Nothing here imports `corral.manager`: a child knows the manager only through
its channel (`corral.ipc`) and the settings it was handed.
"""
