"""nnInteractive's server protocol on ``nnseg serve --interactive`` (the routes ``nninteractive-client`` calls).

Modules: :mod:`~nnseg.serve.interactive.wire` (the packed-array body format), :mod:`~nnseg.serve.interactive.sessions`
(leases, limits, timeouts, the one prediction thread, and what sessions hold of the server's memory budget) and
:mod:`~nnseg.serve.interactive.api` (the routes). The sessions themselves are :mod:`nnseg.interactive`'s.
"""
