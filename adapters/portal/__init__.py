"""The portal: web pages for people (pages.py) and the JSON API for programs (api.py), over registry_core's
queries."""
