-- relaynet.json: exact integers, [] vs {}, strict input.

local json = require("relaynet.json")

describe("relaynet.json", function()
  it("keeps [] and {} apart through decode and encode", function()
    assert.equal('[[],{},{"a":[]}]', json.encode(json.decode('[[],{},{"a":[ ]}]')))
  end)

  it("decodes integral numbers as integers and prints them exactly", function()
    local v = json.decode('{"id":1,"big":9007199254740991,"f":1.5,"e":3e2}')
    assert.equal("integer", math.type(v.id))
    assert.equal(9007199254740991, v.big)
    assert.equal("integer", math.type(v.e))
    assert.equal(1.5, v.f)
    assert.equal('{"big":9007199254740991,"e":300,"f":1.5,"id":1}', json.encode(v))
    assert.equal("[0.1,0.3333333333333333]", json.encode({ 0.1, 1 / 3 }))
  end)

  it("rejects invalid UTF-8, raw control characters and deep nesting", function()
    assert.same({ nil, "the text is not valid UTF-8" }, { json.decode('"\255"') })
    assert.same({ nil, "raw control character in a string at character 3" }, { json.decode('"a\1b"') })
    local deep = string.rep("[", 33) .. string.rep("]", 33)
    local v, err = json.decode(deep)
    assert.is_nil(v)
    assert.equal("nesting deeper than 32 levels at character 33", err)
    assert.is_table(json.decode(string.rep("[", 32) .. string.rep("]", 32)))
  end)

  it("decodes strictly and says where the text went wrong", function()
    local cases = {
      { "", "expected a value but the text ended at character 1" },
      { "[1,2", "expected ',' or ']' at character 5" },
      { [[{"a":1,}]], "expected a string key at character 8" },
      { [[{"a" 1}]], "expected ':' after a key at character 6" },
      { "[01]", "expected ',' or ']' at character 3" },
      { "[1.]", "invalid number at character 2" },
      { "[.5]", "expected a value at character 2" },
      { "[NaN]", "expected a value at character 2" },
      { "[0x10]", "expected ',' or ']' at character 3" },
      { [["\q"]], "invalid escape in a string at character 2" },
      { [["\u12"]], [[invalid \u escape in a string at character 2]] },
      { [["\udc00"]], [[unpaired surrogate in a \u escape at character 2]] },
      { [["abc]], "unterminated string at character 1" },
      { "1 2", "unexpected text after the value at character 3" },
      { "tru", "expected a value at character 1" },
    }
    for _, c in ipairs(cases) do
      assert.same({ nil, c[2] }, { json.decode(c[1]) }, c[1])
    end
  end)

  it("decodes escapes, surrogate pairs, integers beyond 2^53, refuses infinite numbers", function()
    assert.equal('a"\\/\b\f\n\r\t' .. "é€😀",
      json.decode([["a\"\\\/\b\f\n\r\t\u00e9\u20ac\ud83d\ude00"]]))
    assert.equal(math.maxinteger, json.decode("9223372036854775807"))
    assert.equal(math.mininteger, json.decode("-9223372036854775808"))
    assert.equal(-4801702825219610270, json.decode("-4801702825219610270"))
    assert.equal("float", math.type(json.decode("-9223372036854775809")))
    assert.equal("float", math.type(json.decode("9223372036854775808")))
    assert.equal(12345678901234567, json.decode("12345678901234567"))
    assert.equal('{"n":12345678901234567}', json.encode(json.decode('{"n":12345678901234567}')))
    -- beyond the double range: refused (an infinity could not be sent on)
    assert.same({ nil, "number out of range at character 2" }, { json.decode("[1e400]") })
    assert.same({ nil, "number out of range at character 1" }, { json.decode("-1e400") })
    assert.equal(0, json.decode("1e-400"))
    assert.equal(json.null, json.decode("null"))
    assert.same({ 1, json.null, 3 }, json.decode(" [ 1 , null , 3 ] "))
    assert.same({ a = { b = {} } }, json.decode('{"a":{"b":{}},"a":{"b":{}}}'))
  end)

  it("round-trips random values and survives random corruption of their text", function()
    math.randomseed(20261123)
    local function rstr()
      local t = {}
      for i = 1, math.random(0, 8) do
        local r = math.random()
        if r < 0.1 then t[i] = string.char(math.random(0, 31))
        elseif r < 0.2 then t[i] = ({ '"', "\\", "/", "\127" })[math.random(4)]
        elseif r < 0.3 then t[i] = ({ "é", "€", "😀" })[math.random(3)]
        else t[i] = string.char(math.random(32, 126)) end
      end
      return table.concat(t)
    end
    local function rval(depth)
      local r = math.random(1, depth > 3 and 4 or 7)
      if r == 1 then return rstr()
      elseif r == 2 then
        return ({ math.random(math.mininteger, math.maxinteger), math.random(-1000, 1000),
          (math.random() - 0.5) * 10 ^ math.random(-30, 30), 0.1, 1 / 3 })[math.random(5)]
      elseif r == 3 then return math.random() < 0.5
      elseif r == 4 then return json.null
      elseif r == 5 then
        local t = {}
        for i = 1, math.random(0, 4) do t[i] = rval(depth + 1) end
        return t
      elseif r == 6 then
        local t = json.array()
        for i = 1, math.random(0, 3) do t[i] = rval(depth + 1) end
        return t
      end
      local t = {}
      for _ = 1, math.random(0, 4) do t[rstr()] = rval(depth + 1) end
      return t
    end
    local pieces = { "", "[", "]", "{", "}", ",", ":", '"', "\\", "\\u", "\\ud800", "1", "-", ".", "e",
      " ", "\1", "\255", "tru", "null", "1e999", "0x1" }
    for _ = 1, 2000 do
      local text = assert(json.encode(rval(0)))
      -- decode(encode(v)) gives v back: the same text again
      local back, derr = json.decode(text)
      assert.is_nil(derr)
      assert.equal(text, json.encode(back))
      for _ = 1, 3 do
        local pos = math.random(1, #text)
        local bad = text:sub(1, pos - 1) .. pieces[math.random(#pieces)] .. text:sub(pos + 1)
        local v, err = json.decode(bad)
        if v == nil then
          assert.is_string(err)
          assert.truthy(err == "the text is not valid UTF-8" or err:match(" at character %d+$"), err)
        end
      end
    end
  end)

  it("caps nesting at 63 levels whatever MAX_DEPTH says, and reads tables raw", function()
    local saved = json.MAX_DEPTH
    json.MAX_DEPTH = 1e7
    local ok, v, err = pcall(json.decode, string.rep("[", 100000) .. string.rep("]", 100000))
    json.MAX_DEPTH = saved
    assert.is_true(ok)
    assert.is_nil(v)
    assert.equal("nesting deeper than 63 levels at character 64", err)
    -- metamethods are not consulted: a proxy encodes as what it holds itself
    local proxy = setmetatable({ own = 1 }, { __index = { other = 2 }, __pairs = function() error("not called") end })
    assert.equal('{"own":1}', json.encode(proxy))
  end)

  it("refuses values JSON cannot carry", function()
    assert.same({ nil, "cannot encode NaN or infinity" }, { json.encode(0 / 0) })
    local t = {}
    t.self = t
    assert.same({ nil, "cannot encode a table that contains itself" }, { json.encode(t) })
    assert.same({ nil, "cannot encode a value of type function" }, { json.encode(print) })
    -- a number key and a string key that print alike would be one JSON key twice
    assert.same({ nil, 'cannot encode a table with the key "1" both as a number and as a string' },
      { json.encode({ [1] = "a", ["1"] = "b", x = 1 }) })
    assert.same({ nil, 'cannot encode a table with the key "0.5" both as a number and as a string' },
      { json.encode({ [0.5] = 1, ["0.5"] = 2 }) })
    assert.equal('{"1":"a","x":1}', json.encode({ [1] = "a", x = 1 }))
  end)
end)

describe("rn.json", function()
  local rn = require("relaynet")

  it("is relaynet.json, the exact codec", function()
    assert.equal(json, rn.json)
  end)

  it("round-trips 5 as the integer 5 and 2^53 + 1 exactly", function()
    local v = rn.json.decode("5")
    assert.equal("integer", math.type(v))
    assert.equal(5, v)
    assert.equal("5", rn.json.encode(v))
    local big = rn.json.decode("9007199254740993")
    assert.equal("integer", math.type(big))
    assert.equal((1 << 53) + 1, big)
    assert.equal("9007199254740993", rn.json.encode(big))
    assert.equal('{"n":9007199254740993,"v":5}', rn.json.encode(rn.json.decode('{"v":5,"n":9007199254740993}')))
  end)

  it("has a null that decodes and encodes as null, and marks empty arrays", function()
    assert.equal(rn.json.null, rn.json.decode("null"))
    assert.equal("null", rn.json.encode(rn.json.null))
    local t = rn.json.decode('{"a":null,"b":[null]}')
    assert.equal(rn.json.null, t.a)
    assert.equal(rn.json.null, t.b[1])
    assert.equal('{"a":null,"b":[null]}', rn.json.encode(t))
    assert.equal("[]", rn.json.encode(rn.json.array()))
    assert.equal("{}", rn.json.encode({}))
  end)

  it("returns nil, message on bad input instead of raising", function()
    local v, err = rn.json.decode("{bad")
    assert.is_nil(v)
    assert.equal("expected a string key at character 2", err)
    -- scripts that call it under pcall still see no table
    local ok, msg = pcall(rn.json.decode, "{bad")
    assert.is_true(ok)
    assert.is_nil(msg)
    assert.same({ nil, "cannot encode NaN or infinity" }, { rn.json.encode({ x = 0 / 0 }) })
  end)
end)
