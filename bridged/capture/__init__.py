"""What reached the developer through their intercepts, recorded on the laptop: for the web
inspector (``bridged inspect``), replay, HAR export and mirror mode's side-by-side view.

::

    cluster ──SSH channel──► daemon's splice ──► local service
                               │ (a copy of the bytes, both ways; forwarding is never slowed)
                               ▼
                             tap (HTTP/1.1: httptools; HTTP/2: frames + HPACK, passively)
                               │ one Captured per request/response, redacted here
                               ▼
                             CaptureStore (SQLite, bounded, kept across restarts)
                               │ list / get / subscribe / clear / HAR
                               ▼
                             control API, inspector (aiohttp on 127.0.0.1, token), CLI

- :mod:`.model`: the records and the settings (pure);
- the taps, redaction of bodies, the store and HAR export live beside it.
"""
