-- spec/support/check_rockspec.lua: checks that the rockspec describes the
-- source tree, so that a new module cannot be left out of the rock.
--
--   lua5.4 spec/support/check_rockspec.lua ROCKSPEC [--committed]
--
-- Run from the repository's top directory. Without --committed it checks
-- the files of the working tree; with --committed, the files committed at
-- HEAD (what `make dist` packs with git archive). It prints one line per
-- problem to stderr and exits 1 when there is any, else prints nothing and
-- exits 0. The checks:
--   * every lua/relaynet/**.lua file is a module of build.modules under its
--     name (lua/relaynet/a/b.lua is relaynet.a.b, a/init.lua is relaynet.a),
--     and every Lua module of build.modules names such a file;
--   * relaynet.core's sources are exactly csrc/*.c;
--   * every relaynet.* module that lua/ or bin/ requires (not through
--     pcall) is a module of build.modules;
--   * every module that lua/ or bin/ requires outside relaynet.* belongs to
--     a rock listed in dependencies (KNOWN_ROCKS maps module to rock; a
--     require written as pcall(require, "m") is optional and not checked);
--   * the rockspec's version is relaynet's _VERSION (lua/relaynet/init.lua).

local ROCKS_OF = { -- module name -> rock name, for the check of dependencies
  luv = "luv",
  argparse = "argparse",
  cjson = "lua-cjson",
  lfs = "luafilesystem",
  lpeg = "lpeg",
  socket = "luasocket",
  ssl = "luasec",
  cqueues = "cqueues",
  dkjson = "dkjson",
}

local rockspec_file, mode = arg[1], arg[2]
if not rockspec_file or (mode and mode ~= "--committed") then
  io.stderr:write("usage: lua5.4 spec/support/check_rockspec.lua ROCKSPEC [--committed]\n")
  os.exit(2)
end

local problems = {}
local function problem(fmt, ...)
  problems[#problems + 1] = string.format(fmt, ...)
end

-- The rockspec is Lua assignments: run it in an empty environment.
local spec = {}
local chunk, lerr = loadfile(rockspec_file, "t", spec)
if not chunk then
  io.stderr:write("check_rockspec: ", lerr, "\n")
  os.exit(1)
end
chunk()

local function lines(cmd)
  local out = {}
  local p = assert(io.popen(cmd))
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end

-- The files considered, relative to the top directory.
local files
if mode == "--committed" then
  files = lines("git ls-tree -r --name-only HEAD -- lua csrc bin")
else
  files = lines("find lua csrc bin -type f")
end
local have = {}
for _, f in ipairs(files) do have[f] = true end

local function read(path)
  if mode == "--committed" then
    local p = assert(io.popen("git show HEAD:" .. path .. " 2>/dev/null"))
    local s = p:read("a")
    p:close()
    return s
  end
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- Lua modules: files against build.modules.
local modules = (spec.build or {}).modules or {}
for _, f in ipairs(files) do
  local rel = f:match("^lua/(relaynet/.*)%.lua$")
  if rel then
    local name = rel:gsub("/init$", ""):gsub("/", ".")
    if modules[name] ~= f then
      problem("%s: build.modules[%q] must be %q (found %s)", rockspec_file, name, f, tostring(modules[name]))
    end
  end
end
for name, src in pairs(modules) do
  if type(src) == "string" and not have[src] then
    problem("%s: module %s names %s, which is not a file%s", rockspec_file, name, src,
      mode and " committed at HEAD" or "")
  end
end

-- The C core: sources against csrc/*.c.
local core = modules["relaynet.core"]
local listed = {}
for _, s in ipairs(type(core) == "table" and core.sources or {}) do
  listed[s] = true
  if not have[s] then problem("%s: relaynet.core source %s is not a file", rockspec_file, s) end
end
for _, f in ipairs(files) do
  if f:match("^csrc/[^/]+%.c$") and not listed[f] then
    problem("%s: relaynet.core's sources lack %s", rockspec_file, f)
  end
end

-- Dependencies: modules required from outside relaynet.
local declared = {}
for _, d in ipairs(spec.dependencies or {}) do
  declared[d:match("^%s*([%w_%-%.]+)")] = true
end
for _, f in ipairs(files) do
  if f:match("%.lua$") or f == "bin/relaynet" then
    local src = read(f)
    local optional = {}
    for m in src:gmatch("pcall%(%s*require%s*,%s*[\"']([%w_%.]+)[\"']") do optional[m] = true end
    for m in src:gmatch("require%s*%(?%s*[\"']([%w_%.]+)[\"']") do
      local top = m:match("^[^.]+")
      if top == "relaynet" and not optional[m] and not modules[m] then
        problem("%s requires %s, which is not a module of %s", f, m, rockspec_file)
      elseif top ~= "relaynet" and not optional[m] then
        local rock = ROCKS_OF[top]
        if not rock then
          problem("%s requires %s: add its rock to dependencies and to ROCKS_OF in %s", f, m, arg[0])
        elseif not declared[rock] then
          problem("%s requires %s: the rockspec's dependencies must list %q", f, m, rock)
        end
      end
    end
  end
end

-- The version.
local v = read("lua/relaynet/init.lua"):match("_VERSION%s*=%s*\"relaynet ([^\"]+)\"")
local rv = tostring(spec.version):match("^(.-)%-%d+$")
if v ~= rv then
  problem("%s: version %s, but lua/relaynet/init.lua says %s", rockspec_file, tostring(spec.version), tostring(v))
end

for _, p in ipairs(problems) do io.stderr:write("check_rockspec: ", p, "\n") end
os.exit(#problems == 0 and 0 or 1)
