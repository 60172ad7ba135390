"""The content library: import from a Markdown folder, search, recommend and render.

Modules: `vocab` (allowed values), `fields` (front-matter field checks), `library` (read and
validate a folder, no database), `importer` (apply a folder to the database), `command` (the
`content import` CLI), `search` (search and look-ups shared by API, bot commands and pages),
`recommend` (next-best content), `render` (safe Markdown to HTML), `errors` (domain errors).
"""
