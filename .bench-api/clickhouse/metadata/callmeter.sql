ATTACH DATABASE callmeter
ENGINE = Ordinary
