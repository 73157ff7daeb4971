"""``hostsflow view``: a local web page with a live chart of a host's traffic by service.

Needs the ``view`` extra (``pip install 'hostsflow[view]'``: aiohttp); the page and its chart
library (uPlot, vendored with its licence under ``static/vendor/uplot``) ship in the package.
"""
