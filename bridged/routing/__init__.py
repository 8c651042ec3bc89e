"""The relay's routing core: who gets the traffic of an intercepted port.

Pure: no asyncio, aiohttp, asyncssh or kubernetes imports (an import-linter contract checks it).
Time is passed in as numbers, so leases are tested without clocks or sleeps.
"""
