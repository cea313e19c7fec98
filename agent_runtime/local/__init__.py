"""The database on this machine: the embedded per-user Postgres (:mod:`.embedded`) and the
migrations runner (:mod:`.migrations`), which also serves any Postgres or Supabase database."""
