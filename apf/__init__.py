"""apf-emu front end: the `apf` command, `apf run`, reports and option tables."""
