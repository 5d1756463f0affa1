-- Lets the examples run from a source checkout before relaynet is
-- installed (`lua5.4 examples/echo.lua`): when require("relaynet") would
-- not find the modules, the checkout's lua/ and build/ (beside this
-- folder) go first on the paths. An installed relaynet is left alone, and
-- so is a checkout that is not built: require then says what is missing.
local dir = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or ""
local root = (dir == "" and "./" or dir) .. "../"
local probe = io.open(root .. "lua/relaynet/init.lua")
if probe and not package.searchpath("relaynet", package.path) then
  package.path = root .. "lua/?.lua;" .. root .. "lua/?/init.lua;" .. package.path
  package.cpath = root .. "build/?.so;" .. package.cpath
end
if probe then probe:close() end
