"""The HTTP routes, one module a resource: each holds the mixin whose methods are the resource's routes.

The ingress (:mod:`deployments.edge.ingress`) builds the state they share (:class:`~.base.IngressBase`) and is the
one class Serve deploys: it inherits every mixin, and Serve binds their methods to it (Serve's class-based views
follow the class's MRO). The routes are declared on the one FastAPI app (:mod:`deployments.edge.http_app`), in the
order of :data:`ROUTES`. Adding a route: a method on the resource's mixin; adding a resource: a module here with its
mixin, one line in :data:`ROUTES`.

- :mod:`.chat`: ``/v1/chat/completions``;
- :mod:`.analyze`: ``/v1/analyze``;
- :mod:`.files`: ``/v1/files``;
- :mod:`.jobs`: ``/v1/video/jobs``;
- :mod:`.models`: ``/v1/models``;
- :mod:`.ops`: health, readiness, ``/v1/memory``, ``/version``;
- :mod:`.pages`: the pages for people and the API description.
"""

from deployments.edge.routes import analyze, chat, files, jobs, models, ops, pages

# The mixins the ingress inherits, one a resource.
ROUTES: tuple[type, ...] = (
    ops.OpsRoutes,
    pages.PageRoutes,
    models.ModelRoutes,
    files.FileRoutes,
    jobs.JobRoutes,
    chat.ChatRoutes,
    analyze.AnalyzeRoutes,
)
