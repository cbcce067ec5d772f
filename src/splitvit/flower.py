"""Split learning on Flower: ``server_app`` (a ``ServerApp``) and ``client_app`` (a ``ClientApp``) for ``flwr
run``, :func:`apps` for apps bound to a config, :func:`overrides` (Flower's run config as splitvit's overrides)
and :func:`simulate` (``splitvit train clients.engine=flower``). Needs the ``flower`` extra. How it works:
:mod:`splitvit.train.flower` and the docs' "Flower" page."""

from .train.flower import apps, client_app, content_bytes, overrides, play, serve_flower, server_app, simulate

__all__ = ["apps", "client_app", "content_bytes", "overrides", "play", "serve_flower", "server_app", "simulate"]
