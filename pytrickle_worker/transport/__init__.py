"""How bytes move: the trickle clients (:mod:`.trickle`), socket binding (:mod:`.listen`),
and the HTTP helpers every route shares (:mod:`.json_body`, :mod:`.http_errors`)."""
