"""The one exception type for user mistakes: the scripts print its message as one line and exit."""


class UserError(Exception):
    """A bad config value, path or file named by the user; the message names it and what is allowed."""
