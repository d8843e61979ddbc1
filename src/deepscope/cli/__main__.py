from deepscope.cli.main import app

app()
