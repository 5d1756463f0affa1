std = "lua54"
max_line_length = 120
files["spec"] = { std = "+busted" }
files["bin/relaynet"] = { std = "lua54" }
exclude_files = { "spec/e2e/node_modules/**", "build/**" }
