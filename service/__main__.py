"""``python -m service``: the command line (``service/commands/``); ``--help`` lists the commands."""

from service.commands import main

if __name__ == "__main__":
    main()
