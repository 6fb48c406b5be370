"""Brokers: implementations of the core's port (:class:`hub.core.broker.Broker`).

``memory.py`` keeps history in the process; ``redis.py`` shares ids, history
and live events between processes and nodes through Redis. The composition
root (:func:`hub.http.app.broker_for`) picks one by URL.
"""
