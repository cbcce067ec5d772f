"""Links carry bytes between the client and the server; they never look inside a message. The
exchange path (:mod:`.exchange`) is the one way a message reaches a link, through its mods."""

from .exchange import CountBytes, Counts, Exchange, LinkTime, Reply, Request, standard_mods
from .inprocess import InProcessLink, Link
from .shaping import LinkModel

__all__ = ["CountBytes", "Counts", "Exchange", "InProcessLink", "Link", "LinkModel", "LinkTime", "Reply", "Request",
           "standard_mods"]
