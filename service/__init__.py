"""hello-birthday: stores dates of birth and answers how many days until a user's birthday."""

__version__ = "1.0.0"
