"""What the docs site generates at build time, so that no page can drift from its source.

- `bench`, `bench_tables`: benchmark tables from bench/results/*.json, each naming the command,
  machine and date it came from;
- `spec_fields`: the spec file's field reference, from the pydantic models of builder.spec;
- `cli_help`: each command's `--help`, as the installed commands print it;
- `fences`: the test attributes of code blocks (`test="skip" reason="..."`), which the docs'
  tests read and the site drops;
- `mkdocs_hooks`: the MkDocs entry (mkdocs.yml `hooks:`) that expands `{{ name(...) }}` calls.
"""
