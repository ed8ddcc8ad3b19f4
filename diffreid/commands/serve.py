from diffreid.cli import CommandError


def register(p):
    p.set_defaults(func=run)


def run(args):
    raise CommandError("this command is not implemented yet (tracked in issue 7)")
