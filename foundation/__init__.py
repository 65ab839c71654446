"""The ground floor both stages stand on: no stage and no command is imported from here."""
