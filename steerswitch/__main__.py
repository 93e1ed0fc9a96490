from steerswitch.cli.main import run

run()
