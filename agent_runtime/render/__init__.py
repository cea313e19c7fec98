"""Renderings for people and tools, from the public models only: topology documents as JSON, DOT,
Mermaid and rich tables (:mod:`.topology`), tables that fit the terminal and metric summaries
(:mod:`.tables`). Shared by the public face (``to_dot`` ...) and the CLI."""
