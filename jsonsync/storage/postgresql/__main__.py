"""C{python -m jsonsync.storage.postgresql migrate --url postgresql://...}"""

from jsonsync.storage.postgresql.backend import main

main()
