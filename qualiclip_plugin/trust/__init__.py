"""The App trust layer every surface calls: request parsing (:mod:`.request`), the server's
policy for App executions (:mod:`.policy`), the plugin's run records (:mod:`.provenance`) and the
ownership rules built on them (:mod:`.protection`). Imports no torch: the App loads it at start.
"""
