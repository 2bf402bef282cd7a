"""The user's mistakes (bad flags, missing or wrong files) as one exception: the CLI prints its message on one line,
`moefy_export: <message>`, and exits 1. Anything else that escapes is moefy_export's own bug (exit 2)."""


class UserError(Exception):
    pass
