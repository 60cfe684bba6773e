"""The documentation site: Markdown pages here, built by MkDocs (mkdocs.yml); the hooks that
generate its reference pages and benchmark tables are in docs.hooks."""
