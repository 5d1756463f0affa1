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
    assert.matches("too many nested", err)
    assert.is_table(json.decode(string.rep("[", 32) .. string.rep("]", 32)))
  end)

  it("refuses values JSON cannot carry", function()
    assert.same({ nil, "cannot encode NaN or infinity" }, { json.encode(0 / 0) })
    local t = {}
    t.self = t
    assert.same({ nil, "cannot encode a table that contains itself" }, { json.encode(t) })
    assert.same({ nil, "cannot encode a value of type function" }, { json.encode(print) })
  end)
end)
