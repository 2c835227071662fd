"""The local web viewer: ``netvis serve CHECKPOINT`` (see ``docs/viewer.md``).

* :class:`Viewer` -- a checkpoint, a data set, a disk cache and a queue of background jobs (dataset
  examples, filter visualizations, saliency, inversion), independent of the web framework;
* :func:`create_app` -- the Starlette application over a viewer (JSON API, the page, pictures);
* :mod:`netvis.app.serve.schema` -- the pydantic schema of every request body;
* :func:`run_server` -- load, print the address, serve with uvicorn (loopback only unless told otherwise).
"""

from netvis.app.serve.app import HostGuard, allowed_host_headers, bind_socket, create_app, run_server
from netvis.app.serve.cache import Cache, FileRefused, read_regular, resolve_inside
from netvis.app.serve.jobs import Job, JobCancelled, JobLimit, JobQueue
from netvis.app.serve.schema import RequestInvalid, parse_job, validate_job
from netvis.app.serve.viewer import UploadError, Viewer, ViewerError, saliency_methods

__all__ = [
    "Cache",
    "FileRefused",
    "HostGuard",
    "Job",
    "JobCancelled",
    "JobLimit",
    "JobQueue",
    "RequestInvalid",
    "UploadError",
    "Viewer",
    "ViewerError",
    "allowed_host_headers",
    "bind_socket",
    "create_app",
    "parse_job",
    "read_regular",
    "resolve_inside",
    "run_server",
    "saliency_methods",
    "validate_job",
]
