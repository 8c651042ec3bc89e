"""The web inspector (``bridged inspect``): the captured records, live, in a browser.

- :mod:`.server`: the aiohttp app the daemon serves on 127.0.0.1, and its guards (token,
  cookie, Host, Origin, a custom header on every state-changing call);
- :mod:`.replay`: sends a record again to the intercept's local service;
- ``static/``: index.html, app.js, style.css — no build step, nothing from a CDN.
"""
