from steerswitch.cli import app

app(prog_name="steerswitch")
